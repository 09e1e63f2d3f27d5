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
from transformers import PreTrainedConfig
from transformers.pytorch_utils import Conv1D

from .configuration import VisionEncoderDecoderConfig
from .modeling import VisionEncoderDecoderModel

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


def _is_gpt2_style(decoder_config: PreTrainedConfig | dict) -> bool:
    model_type = decoder_config.get("model_type") if isinstance(decoder_config, dict) else decoder_config.model_type
    return model_type == "gpt2"


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
    cross_attention_reduce_factor: int = 4
    prompt_template: str = DEFAULT_TEMPLATE
    retrieval_k: int = 4
    train_cross_attention_norm: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if self.conditioning == "auto" and self.decoder is not None:
            # SmallCap's own reduced cross-attention exists for GPT-2; every other decoder gets the injected one.
            self.conditioning = "native" if _is_gpt2_style(self.decoder) else "injected"
        super().__post_init__(**kwargs)
        if self.cross_attention_reduce_factor not in (1, 2, 4, 8, 16):
            raise ValueError(
                f"cross_attention_reduce_factor={self.cross_attention_reduce_factor}; SmallCap uses 1, 2, 4, 8 or 16."
            )
        reduced = self.cross_attention_reduce_factor != 1
        if self.conditioning == "native" and not _is_gpt2_style(self.decoder) and reduced:
            raise ValueError(
                f"cross_attention_reduce_factor={self.cross_attention_reduce_factor} with conditioning='native' needs "
                f"a GPT-2 decoder (got {self.decoder.model_type}); use conditioning='injected' (the default for it)."
            )
        if "{captions}" not in self.prompt_template:
            raise ValueError(f"prompt_template={self.prompt_template!r} must contain '{{captions}}'.")

    @classmethod
    def from_encoder_decoder_configs(cls, encoder_config, decoder_config, **kwargs: Any) -> SmallCapConfig:
        if kwargs.get("conditioning", "auto") == "auto":
            kwargs["conditioning"] = "native" if _is_gpt2_style(decoder_config) else "injected"
        return super().from_encoder_decoder_configs(encoder_config, decoder_config, **kwargs)


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
        from .freezing import apply_freeze_policy

        apply_freeze_policy(self, "encoder+decoder", verbose=False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> SmallCapModel:
        model = super().from_pretrained(*args, **kwargs)
        from .freezing import apply_freeze_policy

        apply_freeze_policy(model, "encoder+decoder", verbose=False)  # loading makes every weight trainable again
        return model

    def _build_conditioning(self) -> None:
        super()._build_conditioning()
        if self.config.conditioning == "native":
            reduce_gpt2_cross_attention(self.decoder, self.config.cross_attention_reduce_factor)

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
        from .processing import decode_predictions

        processor = processor or self.processor
        pixel_values = processor(images=images)["pixel_values"].to(self.device, self.dtype)
        prompts = self.prompts(retrieved_captions, len(images))
        prompt_ids, prompt_mask = self.encode_prompts(processor.tokenizer, prompts)
        ids = self.generate(
            pixel_values,
            decoder_input_ids=prompt_ids.to(self.device),
            decoder_attention_mask=prompt_mask.to(self.device),
            **generate_kwargs,
        )
        return decode_predictions(processor.tokenizer, ids[:, prompt_ids.shape[1] :])

    def encode_prompts(self, tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start token + prompt ids, left-padded: `decoder_input_ids` and `decoder_attention_mask` `[B, P]`."""
        start = [self.config.decoder_start_token_id]
        rows = [start + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids, mask
