"""SmallCap (Ramos et al., CVPR 2023) as a splice preset: reduced cross-attention, retrieval-augmented prompts.

A frozen vision encoder and a frozen decoder; only a cross-attention whose query/key/value width is divided by
`cross_attention_reduce_factor` trains. For GPT-2-style decoders the decoder's own cross-attention is built at the
reduced width (the original's shapes and parameter count); any other decoder gets splice's injected cross-attention at
the same reduction. The decoder is prompted with captions retrieved for the image ("Similar images show ... This
image shows "), and scored only on the caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from huggingface_hub.dataclasses import strict
from transformers.pytorch_utils import Conv1D

from .. import inference
from ..conditioning import is_cross_attention_name, trains_with_conditioning
from ..configuration import VisionEncoderDecoderConfig
from .composites import VisionEncoderDecoderModel

DEFAULT_TEMPLATE = "Similar images show {captions}. This image shows "
NO_RETRIEVAL_PROMPT = "This image shows "


def build_prompt(captions: Sequence[str] | None, template: str = DEFAULT_TEMPLATE, k: int = 4) -> str:
    r"""
    The decoder prompt for one image.

    Args:
        captions: retrieved captions, best first (`None` or empty: no retrieval, "This image shows ").
        template: must contain `{captions}`; the first `k` captions are joined by blank lines, as in the original.
        k: how many retrieved captions to use.
    """
    captions = list(captions or [])[:k]
    if not captions:
        return NO_RETRIEVAL_PROMPT
    return template.format(captions="\n\n".join(c.strip().rstrip(".") for c in captions))


@strict
class SmallCapConfig(VisionEncoderDecoderConfig):
    r"""
    Configuration of [`SmallCapModel`].

    Args:
        cross_attention_reduce_factor (`int`, *optional*, defaults to 4): SmallCap's r ∈ {1, 2, 4, 8, 16}.
        prompt_template (`str`): the retrieval prompt, with `{captions}`.
        retrieval_k (`int`, *optional*, defaults to 4): retrieved captions per image.
        train_cross_attention_norm (`bool`, *optional*, defaults to `False`): SmallCap keeps the cross-attention layer
            norms of GPT-2 frozen; only the projections train.
        kwargs: the fields of [`VisionEncoderDecoderConfig`].
    """

    model_type: ClassVar[str] = "smallcap"
    # SmallCap's own reduced cross-attention exists for GPT-2; every other decoder gets the injected one.
    native_families: ClassVar[tuple[str, ...]] = ("gpt2",)
    cross_attention_reduce_factor: int = 4
    prompt_template: str = DEFAULT_TEMPLATE
    retrieval_k: int = 4
    train_cross_attention_norm: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.cross_attention_reduce_factor not in (1, 2, 4, 8, 16):
            raise ValueError(
                f"cross_attention_reduce_factor={self.cross_attention_reduce_factor}; SmallCap uses 1, 2, 4, 8 or 16."
            )
        reduced = self.cross_attention_reduce_factor != 1
        if self.conditioning == "native" and self.decoder.model_type not in self.native_families and reduced:
            raise ValueError(
                f"cross_attention_reduce_factor={self.cross_attention_reduce_factor} with conditioning='native' needs "
                f"a GPT-2 decoder (got {self.decoder.model_type}); use conditioning='injected' (the default for it)."
            )
        if "{captions}" not in self.prompt_template:
            raise ValueError(f"prompt_template={self.prompt_template!r} must contain '{{captions}}'.")


def reduce_gpt2_cross_attention(decoder: torch.nn.Module, reduce_factor: int) -> None:
    """Rebuild GPT-2's cross-attention projections at width D/r with the head count kept (SmallCap's shapes).

    Only the projections and the three size attributes GPT-2's attention reads are changed; the modeling code is
    GPT-2's own.
    """
    for module in decoder.modules():
        if not getattr(module, "is_cross_attention", False) or not hasattr(module, "q_attn"):
            continue
        width = module.embed_dim
        inner = width // reduce_factor
        if inner % module.num_heads:
            raise ValueError(
                f"cross_attention_reduce_factor={reduce_factor} leaves {inner} dimensions for {module.num_heads} "
                "heads; choose a factor that keeps the width divisible by the head count."
            )
        place = {"device": module.c_proj.weight.device, "dtype": module.c_proj.weight.dtype}
        module.q_attn = Conv1D(inner, width).to(**place)  # q: D -> D/r
        module.c_attn = Conv1D(2 * inner, width).to(**place)  # k, v: D -> 2 D/r
        module.c_proj = Conv1D(width, inner).to(**place)  # out: D/r -> D
        module.split_size = inner
        module.head_dim = inner // module.num_heads
        module.scaling = module.head_dim**-0.5 if module.scale_attn_weights else 1.0
        if module.scale_attn_by_inverse_layer_idx:
            module.scaling /= float(module.layer_idx + 1)


class SmallCapModel(VisionEncoderDecoderModel):
    r"""
    SmallCap: a vision encoder, any decoder, reduced cross-attention, retrieval-augmented prompts. Encoder and decoder
    start frozen; only the cross-attention trains.

    Example:

    ```python
    >>> model = SmallCapModel.from_encoder_decoder_pretrained(clip_dir, gpt2_dir, cross_attention_reduce_factor=4)
    >>> model.caption(images, processor=processor, retrieved_captions=datastore.retrieve_for_images(images))
    ```
    """

    config_class = SmallCapConfig
    base_model_prefix = "smallcap"

    def __init__(self, config=None, encoder=None, decoder=None):
        super().__init__(config, encoder, decoder)
        self.freeze_to_conditioning()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> SmallCapModel:
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_to_conditioning()  # loading makes every weight trainable again
        return model

    def freeze_to_conditioning(self) -> None:
        """SmallCap's policy: only what joins encoder and decoder trains (`--freeze encoder+decoder`)."""
        trainable = trains_with_conditioning(self)
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def _after_conditioning_built(self) -> None:
        # GPT-2's own cross-attention (native) is narrowed; a decoder without one (injected) has nothing to narrow.
        reduce_gpt2_cross_attention(self.decoder, self.config.cross_attention_reduce_factor)

    def keeps_frozen(self, name: str) -> bool:
        # The original trains the reduced projections of GPT-2's cross-attention, not its layer norm (`ln_cross_attn`).
        is_norm = any(fragment in name.lower() for fragment in ("ln_", "layernorm", "layer_norm", "norm."))
        return not self.config.train_cross_attention_norm and is_cross_attention_name(name) and is_norm

    def prompts(self, retrieved_captions: Sequence[Sequence[str]] | None, batch_size: int) -> list[str]:
        """One decoder prompt per image from its retrieved captions (or the no-retrieval prompt)."""
        if retrieved_captions is None:
            return [NO_RETRIEVAL_PROMPT] * batch_size
        return [build_prompt(c, self.config.prompt_template, self.config.retrieval_k) for c in retrieved_captions]

    @torch.no_grad()
    def caption(
        self,
        images,
        processor=None,
        retrieved_captions: Sequence[Sequence[str]] | None = None,
        **generate_kwargs,
    ) -> list[str]:
        r"""
        Caption a batch of images, each with its own retrieval prompt; the prompt is stripped from the returned text.

        Prompts of different lengths share one batch: they are left-padded and the positions count real tokens only,
        so each image gets the caption it would get alone.

        Args:
            images: PIL images.
            processor (`SpliceProcessor`, *optional*): defaults to `model.processor`.
            retrieved_captions (*optional*): per image, its retrieved captions (e.g. `Datastore.retrieve_for_images`).
            generate_kwargs: passed to `generate`.
        """
        prompts = self.prompts(retrieved_captions, len(images))
        return inference.caption(self, images, processor or self.processor, prompts, **generate_kwargs)
