"""Special tokens and generation settings: `model.config` and `model.generation_config` kept in agreement.

Whichever side was edited since the last sync wins, so `model.config.pad_token_id = ...` (seed docs) and
`model.generation_config.pad_token_id = ...` (transformers v5) both work; ids are validated against the vocabulary.
"""

from __future__ import annotations

from typing import Any

from ..token_ids import SPECIAL_TOKENS, resolve_special_tokens, validate_token_ids


class SpecialTokensMixin:
    """For `SpliceModel`: the sync, explicit configuration, and the places that must sync first."""

    def _sync_generation_config(self) -> None:
        """Make config and generation config agree on special tokens; mirror generation settings set on the config.

        Whichever side was edited since the last sync wins, so `model.config.pad_token_id = ...` (seed docs) and
        `model.generation_config.pad_token_id = ...` (transformers v5) both work.
        """
        gen = self.generation_config
        if gen is None:
            return
        for key, value in self.config.new_generation_overrides().items():
            setattr(gen, key, value)
        for field, synced in self._synced_tokens.items():
            on_config, on_gen = getattr(self.config, field), getattr(gen, field, None)
            if on_config != synced:
                setattr(gen, field, on_config)
            elif on_gen != synced:
                setattr(self.config, field, on_gen)
        values = resolve_special_tokens(self.config, gen)
        validate_token_ids(values, self.config.decoder.vocab_size, values.pop("_source"))
        for field in SPECIAL_TOKENS:
            setattr(self.config, field, values[field])
            setattr(gen, field, values[field])
        self._synced_tokens = {field: values[field] for field in SPECIAL_TOKENS}

    def configure_special_tokens(self, tokenizer: Any = None, **token_ids: int | list[int] | None) -> dict[str, Any]:
        r"""
        Set the special tokens from explicit ids and, for what is still unset, from a tokenizer.

        Args:
            tokenizer (*optional*): e.g. BERT's tokenizer fills `decoder_start_token_id` with `[CLS]` and
                `eos_token_id` with `[SEP]` when the configs leave them unset.
            token_ids: explicit `decoder_start_token_id`, `pad_token_id`, `eos_token_id`, `bos_token_id`.

        Returns:
            The resolved ids.
        """
        self._sync_generation_config()
        values = resolve_special_tokens(self.config, self.generation_config, tokenizer, **token_ids)
        values.pop("_source")
        for field, value in values.items():
            setattr(self.config, field, value)
        self._sync_generation_config()
        return values

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, **kw):
        """Resize the decoder's vocabulary (input and output embeddings); the composite config follows."""
        embeddings = self.decoder.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, **kw)
        self._sync_generation_config()
        return embeddings

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        self._sync_generation_config()
        super().save_pretrained(save_directory, *args, **kwargs)
