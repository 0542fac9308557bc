"""SAM's mask decoder as the SPEX mask generator; the ONE module that imports segment_anything.

Why the import is unusual: ``segment_anything/__init__.py`` imports its predictor, which
imports torchvision, and torchvision does not load beside the CPU torch on these
machines. The modeling files themselves need only torch. So when torchvision is not
importable, the ``segment_anything/modeling`` folder is loaded by file path under a
private package name, without ever running the top-level package ``__init__``. When
torchvision works, the normal import is used.

Why the override: stock ``MaskDecoder.predict_masks`` takes ONE image embedding and N
prompt sets (it repeats the image per prompt set). SPEX has B images with one prompt set
each, so :class:`BatchedMaskDecoder` skips the repeat; for B = 1 it equals the stock path
(tested).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from model.checkpoint_files import CheckpointError, check_state_dict

_PRIVATE_NAME = "_spex_sam_modeling"


def _load_modeling() -> ModuleType:
    """``segment_anything.modeling``, imported without the package ``__init__`` if needed."""
    try:
        import torchvision  # noqa: F401  (only probing whether it loads)
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms ..."
        pass
    else:
        return importlib.import_module("segment_anything.modeling")
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    # find_spec on a top-level name locates the package without executing it.
    top = importlib.util.find_spec("segment_anything")
    if top is None or not top.submodule_search_locations:
        raise ImportError("segment-anything is not installed (pip install segment-anything)")
    folder = Path(next(iter(top.submodule_search_locations))) / "modeling"
    # Load modeling/__init__.py as a package of its own: its relative imports (.common,
    # .mask_decoder, ...) then resolve inside that folder; it imports only torch.
    spec = importlib.util.spec_from_file_location(
        _PRIVATE_NAME, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[_PRIVATE_NAME]
        raise
    return module


_modeling = _load_modeling()
if TYPE_CHECKING:
    from segment_anything.modeling.mask_decoder import MaskDecoder
else:
    MaskDecoder = _modeling.MaskDecoder
TwoWayTransformer = _modeling.TwoWayTransformer
LayerNorm2d = sys.modules[f"{_modeling.__name__}.common"].LayerNorm2d
PositionEmbeddingRandom = sys.modules[
    f"{_modeling.__name__}.prompt_encoder"
].PositionEmbeddingRandom


class BatchedMaskDecoder(MaskDecoder):
    """MaskDecoder decoding B image embeddings with B prompt sets (no per-prompt repeat)."""

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        detail: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``detail``: optional (B, dim/8, 4h, 4w) features added to the upscaled
        embedding before the hypernetwork product (model/detail.py)."""
        b = image_embeddings.shape[0]
        if sparse_prompt_embeddings.shape[0] != b:
            raise ValueError(
                f"{b} image embeddings but {sparse_prompt_embeddings.shape[0]} prompt sets"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        if detail is not None:
            upscaled = upscaled + detail.to(upscaled.dtype)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        return masks, self.iou_prediction_head(iou_token_out)


#: Channels of SAM's mask-prompt encoder (its prompt_encoder's ``mask_in_chans``).
MASK_IN_CHANS = 16


class SpexMaskDecoder(nn.Module):
    """Image embedding (B, D, h, w) + prompt tokens (B, K, D) + optional dense mask prompt
    (B, 1, 4h, 4w) -> mask logits (B, 1, 4h, 4w).

    The TCP tokens (and the target token) are the sparse prompts. The dense prompt is a
    coarse mask as logits, encoded by SAM's own mask-prompt encoder
    (``mask_downscaling``: what SAM is built to refine); a sample without one gets SAM's
    no-mask embedding. One mask out (SAM's single-mask output token).
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, mlp_dim: int, iou_head_hidden_dim: int
    ) -> None:
        super().__init__()
        self.dim = dim
        self.mask_decoder = BatchedMaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(
                depth=depth, embedding_dim=dim, num_heads=num_heads, mlp_dim=mlp_dim
            ),
            num_multimask_outputs=3,  # kept so SAM checkpoints load; SPEX uses mask 0
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.no_mask_embed = nn.Embedding(1, dim)
        c = MASK_IN_CHANS
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters the single-mask output never touches (IoU head, multimask MLPs);
        training keeps them frozen so that 'trainable' means 'receives a gradient'."""
        md = self.mask_decoder
        params = list(md.iou_prediction_head.parameters())
        for mlp in md.output_hypernetworks_mlps[1:]:
            params.extend(mlp.parameters())
        return params

    def dense_embedding(
        self, b: int, h: int, w: int, mask: torch.Tensor | None, present: torch.Tensor | None
    ) -> torch.Tensor:
        """(B, D, h, w) dense prompt: the encoded mask where ``present``, else no-mask."""
        none = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        if mask is None:
            return none
        encoded = self.mask_downscaling(mask.to(none.dtype))
        if encoded.shape[-2:] != (h, w):
            raise ValueError(
                f"mask prompt must be 4x the embedding grid {(h, w)}, got {mask.shape}"
            )
        if present is None:
            return encoded
        return torch.where(present.reshape(b, 1, 1, 1), encoded, none)

    def forward(
        self,
        image_embedding: torch.Tensor,
        sparse: torch.Tensor,
        detail: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask``: (B, 1, 4h, 4w) dense mask prompt (logits); ``mask_present`` (B,)
        bool: which samples have one (the others get the no-mask embedding)."""
        b, _, h, w = image_embedding.shape
        image_pe = self.pe_layer((h, w)).unsqueeze(0).to(image_embedding.dtype)
        dense = self.dense_embedding(b, h, w, mask, mask_present)
        masks, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse.to(image_embedding.dtype),
            dense_prompt_embeddings=dense.to(image_embedding.dtype),
            detail=detail,
        )
        return masks[:, :1]  # SAM's single-mask output (multimask_output=False)

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load the decoder (``mask_decoder.*``) and, when present, the no-mask embedding,
        mask-prompt encoder and positional-encoding matrix (``prompt_encoder.*``) from a
        SAM ``.pth``."""
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        dec = {
            k[len("mask_decoder.") :]: v for k, v in state.items() if k.startswith("mask_decoder.")
        }
        if not dec:
            raise CheckpointError(f"{path}: no 'mask_decoder.*' tensors; not a SAM checkpoint")
        check_state_dict(
            self.mask_decoder.state_dict(), dec, source=str(path), prefix="mask_decoder."
        )
        self.mask_decoder.load_state_dict(dec)
        extra = {
            "prompt_encoder.no_mask_embed.weight": self.no_mask_embed.weight,
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
                self.pe_layer.positional_encoding_gaussian_matrix
            ),
            **{
                f"prompt_encoder.mask_downscaling.{k}": v
                for k, v in self.mask_downscaling.state_dict(keep_vars=True).items()
            },
        }
        with torch.no_grad():
            for key, target in extra.items():
                if key in state:
                    check_state_dict({key: target}, {key: state[key]}, source=str(path))
                    target.copy_(state[key])
