"""How each kind of model turns an image into the decoder's visual tokens, for the SAP modes that score image
regions (`complexity`) or read the vision tower's own attention (`vis_enc_attn`).

Three layouts cover the supported families (which family uses which is in `adapters.MODEL_FAMILIES`):

- `GridLayout` (LLaVA-1.5): one tile, one visual token per vision patch, row-major (the CLS token dropped under the
  `default` feature strategy).
- `AnyresLayout` (LLaVA-NeXT, LLaVA-OneVision): the base image (one tile) then the high-resolution grid of tiles,
  unpadded, with one image-newline token closing each row (OneVision: a lone base tile gets one newline too, and a
  large grid is bilinearly downsampled). The model's own `pack_image_features` places the tokens, so the mapping here
  is the model's by construction: per-patch scores are packed exactly as the patch features are, with NaN where a
  token holds no patch (the newlines).
- `MergedLayout` (Qwen2-VL, Qwen2.5-VL): one visual token per 2x2 group of vision patches (the merger), in row-major
  order of the merged grid; inside the vision tower Qwen2.5-VL orders the groups by attention window, which is undone.

Each layout gives, per image, a map over its tiles' patches (`patch_pixels` for complexity, the attention each
patch receives for vis_enc_attn) and `pack`s such maps into one value per visual token.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

RECORD_ATTN = "lostattn_record"


def _denormalise(pixels: torch.Tensor, processor) -> torch.Tensor:
    """Processor pixel values (..., 3, h, w) back to RGB in [0, 1]."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(3, 1, 1)
    return (pixels.float().cpu() * std + mean).clamp(0, 1)


def split_patches(img: torch.Tensor, patch: int) -> torch.Tensor:
    """(3, H, W) -> (P, 3, patch, patch), patches read row-major (a ViT's token order)."""
    c, h, w = img.shape
    img = img[:, : h - h % patch, : w - w % patch]
    p = img.reshape(c, h // patch, patch, w // patch, patch).permute(1, 3, 0, 2, 4)
    return p.reshape(-1, c, patch, patch)


# ---- recording one vision layer's attention ----------------------------------------------------------------------
class _Recorder:
    """Called by the attention function of the one vision layer being read: the attention each key receives, mean
    over heads and queries, reduced by `reduce` (one result per call; Qwen runs one call per image chunk).

    Never holds a full L x L matrix: per head, the query rows go in chunks of at most `budget` score entries
    (a multiple of `reduce.unit` rows), each chunk's probabilities are reduced to a per-key sum and accumulated in
    float32. `exact`: the scores and probabilities in the model's dtype as the official eager code computes them
    (softmax in float32 cast back), with each mean rounded once to that dtype; otherwise in float32."""

    budget = 2**22  # score entries per chunk (16 MiB in float32)

    def __init__(self, reduce, exact: bool = False):
        self.reduce, self.exact, self.out = reduce, exact, []

    def __call__(self, query, key, scaling, attention_mask):
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1) if key.shape[1] != query.shape[1] else key
        dt = query.dtype if self.exact else torch.float32
        L = query.shape[2]
        unit = self.reduce.unit
        step = max(unit, (self.budget // max(k.shape[2], 1)) // unit * unit)
        per_head = []
        for h in range(query.shape[1]):
            kh = k[:, h].to(dt).transpose(-1, -2)
            total = None
            for a in range(0, L, step):
                s = torch.matmul(query[:, h, a:a + step].to(dt), kh) * scaling
                if attention_mask is not None:
                    m = attention_mask[:, 0, a:a + step]
                    s = s.masked_fill(~m, torch.finfo(dt).min) if m.dtype == torch.bool else s + m.to(dt)
                part = self.reduce.sum(torch.softmax(s, dim=-1, dtype=torch.float32).to(dt), a)
                total = part if total is None else total + part
            per_head.append((total / self.reduce.count(L)).to(dt))  # mean over queries, rounded once to dt
        self.out.append(torch.stack(per_head, 1).mean(1).float())  # mean over heads (in dt) -> (B, P)


class _QueryMean:
    """Sum over query rows of the attention each key receives: rows and columns of the CLS token dropped when
    `drop_first` (LLaVA's default strategy); `unit` > 1 pools `unit` x `unit` blocks of rows and keys by their max
    first (Qwen's 2x2 merge groups, consecutive in the tower's order)."""

    def __init__(self, drop_first: bool = False, unit: int = 1):
        self.drop_first, self.unit = drop_first, unit

    def sum(self, p: torch.Tensor, first_row: int) -> torch.Tensor:
        """(B, R, L) probabilities of query rows first_row.. -> (B, P) per-key sums in float32."""
        if self.drop_first:
            p = p[:, 1:, 1:] if first_row == 0 else p[:, :, 1:]
        if self.unit > 1:
            b, r, L = p.shape
            p = p.reshape(b, r // self.unit, self.unit, L // self.unit, self.unit).amax(2).amax(3)
        return p.float().sum(1)

    def count(self, L: int) -> int:
        """How many (pooled) query rows the mean runs over."""
        return L - 1 if self.drop_first else L // self.unit


class _QuerySum(_QueryMean):
    """The per-key sum over every query row, not yet divided (the caller divides per image)."""

    def count(self, L: int) -> int:
        return 1


def _eager_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The towers' own eager attention (CLIP, SigLIP, Qwen vision: one formula), for a recorded layer under eager."""
    k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1) if key.shape[1] != query.shape[1] else key
    v = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1) if value.shape[1] != query.shape[1] else value
    s = torch.matmul(query, k.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        s = s + attention_mask
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(p, v).transpose(1, 2).contiguous(), None


def _record_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    rec = getattr(module, "_lostattn_record", None)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if rec is not None:
        rec(query, key, scaling, attention_mask)
    if rec is not None and rec.exact:  # the tower runs eager (the official arithmetic): keep its arithmetic
        return _eager_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(RECORD_ATTN, _record_forward)
AttentionMaskInterface.register(RECORD_ATTN, sdpa_mask)


@contextmanager
def _recording(tower_config, attn_module, reduce):
    old = tower_config._attn_implementation
    rec = _Recorder(reduce, exact=old == "eager")
    tower_config._attn_implementation = RECORD_ATTN
    attn_module._lostattn_record = rec
    try:
        yield rec
    finally:
        tower_config._attn_implementation = old
        del attn_module._lostattn_record


def _mean_over_queries(drop_first: bool):
    return _QueryMean(drop_first=drop_first)


# ---- the three layouts ---------------------------------------------------------------------------------------------
class _TowerLayout:
    """What every layout reads from the adapter: the vision tower and its layers."""

    def tower(self, lm):
        return lm.adapter.vision_tower

    def vision_layers(self, lm):
        return lm.adapter.vision_layers

    def raw_resize_shapes(self, lm, inputs) -> list[tuple[int, int, int]] | None:
        """Per image (height, width, region size in pixels) of the official scripts' complexity input (the raw
        image resized, then scored per region), or None where no official script defines one."""
        return None


class GridLayout(_TowerLayout):
    """One tile per image; one token per patch (LLaVA-1.5)."""

    kind = "grid"

    def feature_layer(self, lm) -> int:
        """Index of the vision layer whose output the decoder receives (`vision_feature_layer`)."""
        layer = lm.model.config.vision_feature_layer
        layer = layer if isinstance(layer, int) else layer[-1]
        n = len(self.vision_layers(lm))
        return layer - 1 if layer >= 0 else n + layer  # hidden_states[k] is the output of layer k - 1

    def _drops_cls(self, lm) -> bool:
        return lm.model.config.vision_feature_select_strategy == "default"

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        """Per image, the processed tiles (T, 3, h, w) as the vision tower sees them (normalised)."""
        return list(inputs["pixel_values"][:, None])

    def patch_size(self, lm) -> int:
        return lm.model.config.vision_config.patch_size

    def raw_resize_shapes(self, lm, inputs) -> list[tuple[int, int, int]] | None:
        """LLaVA-1.5's script resizes the raw image to the tower's input and scores each patch."""
        h, w = inputs["pixel_values"].shape[-2:]
        return [(int(h), int(w), self.patch_size(lm))] * inputs["pixel_values"].shape[0]

    def patch_pixels(self, lm, inputs) -> list[torch.Tensor]:
        """Per image (T, P, 3, p, p): each tile's patches in RGB [0, 1]."""
        p = self.patch_size(lm)
        return [torch.stack([split_patches(t, p) for t in _denormalise(tiles, lm.processor)])
                for tiles in self.tiles(lm, inputs)]

    def received_attention(self, lm, inputs, layer: int) -> list[torch.Tensor]:
        """Per image (T, P): the attention each patch receives in vision layer `layer`, mean over heads and patch
        queries."""
        tiles = self.tiles(lm, inputs)
        flat = torch.cat(tiles).to(lm.device, next(self.tower(lm).parameters()).dtype)
        attn = lm.adapter.vision_attn(layer)
        with torch.no_grad(), _recording(self.tower(lm).config, attn, _mean_over_queries(self._drops_cls(lm))) as rec:
            self.tower(lm)(flat, output_hidden_states=False)
        maps = torch.cat(rec.out).cpu()
        return list(torch.split(maps, [t.shape[0] for t in tiles]))

    def pack(self, lm, inputs, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m.reshape(-1).float() for m in maps]


class AnyresLayout(GridLayout):
    """Base image plus a grid of high-resolution tiles, unpadded, newline tokens (LLaVA-NeXT, LLaVA-OneVision)."""

    kind = "anyres"

    def _num_tiles(self, lm, inputs) -> list[int]:
        mod = importlib.import_module(type(lm.model).__module__)
        cfg = lm.model.config
        return [mod.image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                              patch_size=cfg.vision_config.image_size)
                for s in inputs["image_sizes"].tolist()]

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        return [pv[:n] for pv, n in zip(inputs["pixel_values"], self._num_tiles(lm, inputs))]

    def raw_resize_shapes(self, lm, inputs) -> None:
        return None  # no official script scores the raw image of a tiled layout

    def pack(self, lm, inputs, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        inner = lm.model.model
        feats = [m.float()[..., None] for m in maps]  # (T, P, 1): a one-channel "feature" per patch
        nan = torch.tensor([float("nan")])
        kw = dict(image_sizes=inputs["image_sizes"], image_newline=nan)
        key = lm.adapter.spec.pack_keyword  # vision_aspect_ratio (OneVision) or vision_feature_select_strategy
        kw[key] = getattr(lm.model.config, key)
        packed, _ = inner.pack_image_features(feats, **kw)  # one (n_tokens, 1) tensor per image
        return [p[:, 0] for p in packed]


class MergedLayout(_TowerLayout):
    """One token per 2x2 group of patches (Qwen2-VL, Qwen2.5-VL)."""

    kind = "merged"

    def feature_layer(self, lm) -> int:
        return len(self.vision_layers(lm)) - 1  # the merger reads the last block

    def _grids(self, inputs) -> list[tuple[int, int, int]]:
        return [tuple(int(v) for v in g) for g in inputs["image_grid_thw"].tolist()]

    def raw_resize_shapes(self, lm, inputs) -> list[tuple[int, int, int]]:
        """Qwen's `process_vision_info` resizes the raw image (PIL, bicubic) to the processor's grid (grid_h * patch,
        grid_w * patch) and the script scores each merged 2x2 group (28 px)."""
        ip = lm.processor.image_processor
        return [(gh * ip.patch_size, gw * ip.patch_size, ip.patch_size * ip.merge_size)
                for _, gh, gw in self._grids(inputs)]

    def patch_pixels(self, lm, inputs) -> list[torch.Tensor]:
        """Per image (1, G, 3, 2p, 2p): the pixels of each merged token, rebuilt from the processor's flattened
        patches (each row holds (3, temporal, p, p); four consecutive rows are one merge group, row-major)."""
        ip = lm.processor.image_processor
        p, m, t = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        out, start = [], 0
        for gt, gh, gw in self._grids(inputs):
            n = gt * gh * gw
            rows = inputs["pixel_values"][start:start + n].float().cpu().reshape(n, 3, t, p, p)[:, :, 0]
            start += n
            g = rows.reshape(-1, m, m, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, m * p, m * p)
            out.append(_denormalise(g, lm.processor)[None])
        return out

    def received_attention(self, lm, inputs, layer: int) -> list[torch.Tensor]:
        """Per image (1, G): attention received per merged token in vision block `layer` (a full-attention block),
        pooled as the official code does: max over the 2x2 group on the query and the key side, mean over queries and
        heads, window order undone (Qwen2.5-VL)."""
        tower = self.tower(lm)
        full = getattr(tower, "fullatt_block_indexes", None)
        if full is not None and layer not in full:
            raise ValueError(f"vision block {layer} of {lm.adapter.family} attends within windows; vis_enc_attn reads a "
                             f"full-attention block ({sorted(full)})")
        reduce = _QueryMean(unit=tower.spatial_merge_size ** 2)  # max over each group, then mean over queries

        grids = self._grids(inputs)
        with torch.no_grad(), _recording(tower.config, lm.adapter.vision_attn(layer), reduce) as rec:
            tower(inputs["pixel_values"].to(lm.device, next(tower.parameters()).dtype),
                  grid_thw=inputs["image_grid_thw"])
        if len(rec.out) != len(grids):
            raise RuntimeError(f"expected one attention chunk per image ({len(grids)}), got {len(rec.out)}")
        maps = [o.cpu() for o in rec.out]
        if lm.adapter.spec.window_order:  # Qwen2.5-VL: groups are in window order inside the tower
            mod = importlib.import_module(type(tower).__module__)
            for i, grid in enumerate(grids):
                win, _ = mod.get_vision_window_index(torch.tensor([grid]), spatial_merge_size=tower.spatial_merge_size,
                                                     window_size=tower.window_size, patch_size=tower.patch_size,
                                                     kwargs={})
                maps[i] = maps[i][:, torch.argsort(win.cpu())]
        return maps

    def pack(self, lm, inputs, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m.reshape(-1).float() for m in maps]


class GroupedLayout(_TowerLayout):
    """Tiles of a fixed patch grid, one visual token per group of neighbouring patches (Gemma 3's average pooling,
    InternVL's and SmolVLM's pixel shuffle, Mistral 3's patch merger), tiles in the order the model places them.

    A subclass says what the tiles of each image are (`tiles`) and which patches each token of a tile holds
    (`groups`, (G, k) patch indices in the token order). A token's region for complexity is the pixels of its
    patches; its vis_enc_attn score the mean attention its patches receive (mean over the tile's patch queries and
    the heads), the mean because the model too averages (pools) or concatenates its patches' features."""

    kind = "grouped"

    def feature_layer(self, lm) -> int:
        return len(self.vision_layers(lm)) - 1  # these families read the tower's last layer

    def patch_size(self, lm) -> int:
        p = lm.model.config.vision_config.patch_size
        return p[0] if isinstance(p, (list, tuple)) else p

    def _visual_counts(self, inputs, lm) -> list[int]:
        return lm.adapter.visual_mask(inputs["input_ids"]).sum(1).tolist()

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        raise NotImplementedError

    def groups(self, lm, rows: int, cols: int) -> torch.Tensor:
        raise NotImplementedError

    def _blocks(self, rows: int, cols: int, f: int) -> torch.Tensor:
        """Row-major f x f blocks of a rows x cols patch grid: (rows/f * cols/f, f*f) patch indices."""
        idx = torch.arange(rows * cols).reshape(rows // f, f, cols // f, f).permute(0, 2, 1, 3)
        return idx.reshape(-1, f * f)

    def patch_pixels(self, lm, inputs) -> list[torch.Tensor]:
        """Per image (T, G, 3, fp, fp): the pixels (RGB in [0, 1]) of each token's patches, per tile."""
        p = self.patch_size(lm)
        out = []
        for tiles in self.tiles(lm, inputs):
            per_tile = []
            for tile in _denormalise(tiles, lm.processor):
                rows, cols = tile.shape[1] // p, tile.shape[2] // p
                regions = []
                for g in self.groups(lm, rows, cols):
                    r, c = g // cols, g % cols
                    regions.append(tile[:, int(r.min()) * p:(int(r.max()) + 1) * p,
                                        int(c.min()) * p:(int(c.max()) + 1) * p])
                per_tile.append(torch.stack(regions))
            out.append(torch.stack(per_tile))
        return out

    def _run_tower(self, lm, flat: torch.Tensor, inputs):
        self.tower(lm)(pixel_values=flat)

    def received_attention(self, lm, inputs, layer: int) -> list[torch.Tensor]:
        """Per image (T, G): the mean attention the patches of each token receive in vision layer `layer`."""
        tiles = self.tiles(lm, inputs)
        flat = torch.cat(tiles).to(lm.device, next(self.tower(lm).parameters()).dtype)
        drop_cls = lm.adapter.spec.vision_drops_cls
        with torch.no_grad(), _recording(self.tower(lm).config, lm.adapter.vision_attn(layer),
                                         _mean_over_queries(drop_cls)) as rec:
            self._run_tower(lm, flat, inputs)
        per_patch = torch.cat(rec.out).float().cpu()  # (total tiles, P)
        rows, cols = flat.shape[-2] // self.patch_size(lm), flat.shape[-1] // self.patch_size(lm)
        per_token = per_patch[:, self.groups(lm, rows, cols)].mean(-1)
        return list(torch.split(per_token, [t.shape[0] for t in tiles]))

    def pack(self, lm, inputs, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m.reshape(-1).float() for m in maps]


class PooledLayout(GroupedLayout):
    """Gemma 3: one tile (the image resized to the tower's size); the projector average-pools k x k patches into
    `mm_tokens_per_image` tokens, row-major."""

    kind = "pooled"

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        return list(inputs["pixel_values"][:, None])

    def groups(self, lm, rows: int, cols: int) -> torch.Tensor:
        side = int(lm.model.config.mm_tokens_per_image ** 0.5)
        return self._blocks(rows, cols, rows // side)


class ShuffledLayout(GroupedLayout):
    """InternVL and SmolVLM: a grid of tiles (plus a thumbnail / global image), each tile's patches pixel-shuffled
    into groups. The groups are read from the model's own pixel-shuffle function applied to the patch indices, so
    the mapping is the model's by construction."""

    kind = "shuffled"

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        per_tile = self._tokens_per_tile(lm)
        counts = [n // per_tile for n in self._visual_counts(inputs, lm)]
        pv = inputs["pixel_values"]
        if pv.dim() == 5:  # SmolVLM: (batch, tiles, 3, h, w), padded with all-zero tiles after the real ones
            return [pv[b, :n] for b, n in enumerate(counts)]
        return list(torch.split(pv, counts))  # InternVL: every image's tiles, one after the other

    def _tokens_per_tile(self, lm) -> int:
        cfg = lm.model.config
        side = cfg.vision_config.image_size
        side = side[0] if isinstance(side, (list, tuple)) else side
        return (side // self.patch_size(lm)) ** 2 // self._factor(lm) ** 2

    def _factor(self, lm) -> int:
        cfg = lm.model.config
        return round(1 / cfg.downsample_ratio) if hasattr(cfg, "downsample_ratio") else cfg.scale_factor

    def groups(self, lm, rows: int, cols: int) -> torch.Tensor:
        inner = lm.model.model
        idx = torch.arange(rows * cols, dtype=torch.float64)
        with torch.no_grad():
            if hasattr(inner, "connector"):  # SmolVLM: (B, seq, C) -> (B, seq / f^2, C f^2)
                out = inner.connector.pixel_shuffle(idx.view(1, -1, 1), self._factor(lm))
            else:  # InternVL: (B, w, h, C) -> (B, h / f, w / f, C f^2)
                out = inner.pixel_shuffle(idx.view(1, rows, cols, 1), scale_factor=1 / self._factor(lm))
        return out.reshape(-1, self._factor(lm) ** 2).round().long()

    def _run_tower(self, lm, flat: torch.Tensor, inputs):
        self.tower(lm)(pixel_values=flat)


class MergedGridLayout(GroupedLayout):
    """Mistral 3: each image at its own size (a multiple of the merged patch), 2 x 2 patches merged into one token,
    row-major; `[IMG_BREAK]` / `[IMG_END]` close each row as text tokens, not visual ones. The Pixtral tower runs
    every image in one sequence with block-diagonal attention."""

    kind = "merged_grid"

    def tiles(self, lm, inputs) -> list[torch.Tensor]:
        return [pv[None, :, :h, :w] for pv, (h, w) in zip(inputs["pixel_values"], inputs["image_sizes"].tolist())]

    def groups(self, lm, rows: int, cols: int) -> torch.Tensor:
        return self._blocks(rows, cols, lm.model.config.spatial_merge_size)

    def received_attention(self, lm, inputs, layer: int) -> list[torch.Tensor]:
        tower = self.tower(lm)
        p = self.patch_size(lm)
        sizes = inputs["image_sizes"].tolist()
        counts = [(h // p) * (w // p) for h, w in sizes]

        # block diagonal over the images: the sum over every query is the sum over the image's own patches, divided
        # by that image's patch count below
        with torch.no_grad(), _recording(tower.config, lm.adapter.vision_attn(layer), _QuerySum()) as rec:
            tower(inputs["pixel_values"].to(lm.device, next(tower.parameters()).dtype), image_sizes=sizes)
        per_patch = torch.cat(rec.out, -1).float().cpu()[0]
        out = []
        for seg, n, (h, w) in zip(torch.split(per_patch, counts), counts, sizes):
            out.append((seg / n)[self.groups(lm, h // p, w // p)].mean(-1)[None])
        return out


TOKEN_LAYOUTS = {"grid": GridLayout(), "anyres": AnyresLayout(), "merged": MergedLayout(), "pooled": PooledLayout(),
                 "shuffled": ShuffledLayout(), "merged_grid": MergedGridLayout()}


def resized_raw_patches(image, height: int, width: int, patch: int) -> torch.Tensor:
    """(P, 3, patch, patch) from the raw PIL image resized (bicubic, no crop) to `height` x `width` and split
    row-major: the official LLaVA script's complexity input."""
    img = image.convert("RGB").resize((width, height))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
    return split_patches(x, patch)


__all__ = ["TOKEN_LAYOUTS", "GridLayout", "AnyresLayout", "MergedLayout", "PooledLayout", "ShuffledLayout",
           "MergedGridLayout", "split_patches", "resized_raw_patches"]
