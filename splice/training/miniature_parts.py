"""SmallCap's pretrained parts in miniature: a tiny CLIP and a tiny GPT-2, pretrained with transformers' own classes.

No pretrained CLIP or GPT-2 can be downloaded offline, so both are pretrained here as they were at scale, on a small
generated world: `CLIPModel` with its own contrastive loss (`return_loss=True`) on image–caption pairs, and
`GPT2LMHeadModel` with its own language-modelling loss on caption text. Each is saved as a checkpoint directory
(`save_pretrained`, with its tokenizer and, for CLIP, its image processor) that splice loads like any hub model:
`SmallCapModel`'s encoder and decoder, and `Embedder.from_pretrained` for the datastore's keys.

Their own quality is measured on held-out data: CLIP's image→text recall@1/@5, GPT-2's perplexity.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from ..data.builtin import train_tokenizer

# CLIPTextModel reads an end-of-text id of 2 as the pre-2023 marker and then pools at the largest token id instead, so
# CLIP's copy of the word tokenizer puts end-of-text at id 3 (swapped with [UNK]).
CLIP_EOS_ID = 3


@dataclasses.dataclass(frozen=True)
class PartsSettings:
    r"""
    Sizes and training lengths of the miniature CLIP and GPT-2.

    Args:
        image_size, patch_size: CLIP's vision input (square) and patches.
        width: the width of CLIP's vision tower and of GPT-2 (equal, as CLIP-ViT-B/32 and GPT-2-base are, so the
            cross-attention needs no projection).
        clip_layers, clip_text_width, clip_text_layers, projection_dim: the rest of CLIP.
        clip_steps, clip_batch_size, clip_learning_rate: CLIP's contrastive pretraining.
        gpt2_layers, gpt2_positions, gpt2_steps, gpt2_batch_size, gpt2_learning_rate: GPT-2's pretraining.
    """

    image_size: int = 48
    patch_size: int = 8
    width: int = 128
    clip_layers: int = 3
    clip_text_width: int = 64
    clip_text_layers: int = 2
    projection_dim: int = 64
    clip_steps: int = 600
    clip_batch_size: int = 64
    clip_learning_rate: float = 1e-3
    gpt2_layers: int = 3
    gpt2_positions: int = 128
    gpt2_steps: int = 500
    gpt2_batch_size: int = 32
    gpt2_learning_rate: float = 2e-3


CAPTION_SEPARATOR = "\n\n"  # SmallCap's prompt joins the retrieved captions with it (`splice.models.smallcap`)


def prompt_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerFast:
    r"""
    The built-in word tokenizer (`splice.data.builtin.train_tokenizer`) learnt from `texts`, with the caption separator
    `"\n\n"` kept as a token of its own (a plain word tokenizer drops it with the other whitespace, running the
    retrieved captions of a prompt together).
    """
    words = train_tokenizer(texts)
    vocab = dict(words.get_vocab()) | {CAPTION_SEPARATOR: len(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=words.unk_token))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(CAPTION_SEPARATOR, "isolated"), pre_tokenizers.Split(Regex(" +"), "removed")]
    )
    core.post_processor = words.backend_tokenizer.post_processor
    return _fast(core, words)


def _fast(core: Tokenizer, like: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=like.pad_token,
        bos_token=like.bos_token,
        eos_token=like.eos_token,
        unk_token=like.unk_token,
        clean_up_tokenization_spaces=False,
    )


def clip_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The word tokenizer's vocabulary for CLIP's text tower: the same words, end-of-text at `CLIP_EOS_ID`."""
    vocab = dict(tokenizer.get_vocab())
    eos, moved = tokenizer.eos_token, tokenizer.convert_ids_to_tokens(CLIP_EOS_ID)
    vocab[eos], vocab[moved] = CLIP_EOS_ID, vocab[eos]
    core = Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.unk_token))
    core.pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
    core.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, CLIP_EOS_ID)])
    return _fast(core, tokenizer)


def clip_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP's image processor at the world's image size (no resizing or cropping beyond it)."""
    size = {"height": image_size, "width": image_size}
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size)


def pretrain_clip(
    directory: str | Path,
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str]],
    held_out_images: Sequence[Image.Image],
    held_out_captions: Sequence[Sequence[str]],
    tokenizer: PreTrainedTokenizerFast,
    settings: PartsSettings,
    seed: int = 0,
) -> dict[str, float]:
    r"""
    Pretrain a tiny `CLIPModel` with its contrastive loss on image–caption pairs; save it to `directory`.

    Each step pairs a batch of images with one of each image's captions at random.

    Args:
        directory: where the model, its tokenizer ([`clip_tokenizer`]) and image processor are saved.
        images, captions: the training images and the captions of each.
        held_out_images, held_out_captions: for [`image_to_text_recall`].
        tokenizer: the word tokenizer of the world's captions.
        settings: sizes and training length.
        seed: seeds the weights and the batches.

    Returns:
        `recall@1`, `recall@5` (held-out image→text), `chance@1`, `chance@5`, `final_loss`, `seconds`, `parameters`.
    """
    start = time.time()
    torch.manual_seed(seed)
    text_tokenizer = clip_tokenizer(tokenizer)
    processor = clip_image_processor(settings.image_size)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(text_tokenizer), "hidden_size": settings.clip_text_width,
            "intermediate_size": 2 * settings.clip_text_width, "num_hidden_layers": settings.clip_text_layers,
            "num_attention_heads": 4, "max_position_embeddings": 32, "pad_token_id": text_tokenizer.pad_token_id,
            "bos_token_id": text_tokenizer.bos_token_id, "eos_token_id": CLIP_EOS_ID,
        },
        vision_config={
            "image_size": settings.image_size, "patch_size": settings.patch_size, "hidden_size": settings.width,
            "intermediate_size": 2 * settings.width, "num_hidden_layers": settings.clip_layers,
            "num_attention_heads": 4,
        },
        projection_dim=settings.projection_dim,
    )  # fmt: skip
    model = CLIPModel(config).train()
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]  # [N, 3, S, S]

    def batch_loss(generator: torch.Generator) -> torch.Tensor:
        rows = torch.randperm(len(pixels), generator=generator)[: settings.clip_batch_size]
        texts = [captions[i][torch.randint(len(captions[i]), (1,), generator=generator).item()] for i in rows.tolist()]
        tokens = text_tokenizer(texts, padding=True, return_tensors="pt")
        return model(**tokens, pixel_values=pixels[rows], return_loss=True).loss

    loss = _fit(model, batch_loss, settings.clip_steps, settings.clip_learning_rate, 0.1, seed, "CLIP contrastive")
    model.eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    text_tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    recall = image_to_text_recall(model, text_tokenizer, processor, held_out_images, held_out_captions)
    parameters = sum(p.numel() for p in model.parameters())
    return recall | {"final_loss": loss, "seconds": time.time() - start, "parameters": parameters}


@torch.no_grad()
def image_to_text_recall(
    model: CLIPModel,
    tokenizer: PreTrainedTokenizerFast,
    processor: CLIPImageProcessor,
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str]],
) -> dict[str, float]:
    r"""
    Image→text recall@1 and @5: each image ranks every caption of the set; a hit is one of its own captions in the top
    k (identical caption texts of other images count as misses, so duplicates cap recall below 1).

    Returns:
        `recall@1`, `recall@5`, and `chance@1`, `chance@5` (a random ranking's expected recall, from the captions per
        image and the set's size).
    """
    owner = torch.tensor([i for i, texts in enumerate(captions) for _ in texts])  # [T]
    texts = [text for group in captions for text in group]
    image_features = model.get_image_features(**processor(images=list(images), return_tensors="pt"))
    text_features = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    image_features = getattr(image_features, "pooler_output", image_features)  # [N, P]
    text_features = getattr(text_features, "pooler_output", text_features)  # [T, P]
    similarity = image_features @ text_features.T  # [N, T]
    ranked = owner[similarity.argsort(dim=1, descending=True)]  # [N, T]: the image owning each ranked caption
    own = ranked == torch.arange(len(images))[:, None]  # [N, T]
    per_image = len(texts) / len(images)
    result = {}
    for k in (1, 5):
        result[f"recall@{k}"] = own[:, :k].any(dim=1).float().mean().item()
        result[f"chance@{k}"] = 1 - math.comb(len(texts) - round(per_image), k) / math.comb(len(texts), k)
    return result


def pretrain_gpt2(
    directory: str | Path,
    texts: Sequence[str],
    held_out_texts: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    settings: PartsSettings,
    seed: int = 0,
) -> dict[str, float]:
    r"""
    Pretrain a tiny `GPT2LMHeadModel` on text with its language-modelling loss; save it and `tokenizer` to `directory`.

    Args:
        directory: where the model and tokenizer are saved.
        texts: training texts (each starts after [BOS] and ends with [EOS]).
        held_out_texts: for the held-out perplexity.
        tokenizer: the word tokenizer.
        settings: sizes and training length.
        seed: seeds the weights and the batches.

    Returns:
        `perplexity` (held-out, per predicted token, [EOS] included), `final_loss`, `seconds`, `parameters`.
    """
    start = time.time()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=settings.width, n_layer=settings.gpt2_layers, n_head=4,
        n_positions=settings.gpt2_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).train()

    def batch_loss(generator: torch.Generator) -> torch.Tensor:
        rows = torch.randint(len(texts), (settings.gpt2_batch_size,), generator=generator).tolist()
        return model(**_lm_batch(tokenizer, [texts[i] for i in rows])).loss

    loss = _fit(model, batch_loss, settings.gpt2_steps, settings.gpt2_learning_rate, 0.01, seed, "GPT-2 language model")
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    parameters = sum(p.numel() for p in model.parameters())
    perplexity = held_out_perplexity(model, tokenizer, held_out_texts)
    seconds = time.time() - start
    return {"perplexity": perplexity, "final_loss": loss, "seconds": seconds, "parameters": parameters}


def _fit(
    model: torch.nn.Module,
    batch_loss: Callable[[torch.Generator], torch.Tensor],
    steps: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    name: str,
) -> float:
    """AdamW with a one-cycle learning rate for `steps` steps on the losses `batch_loss` draws; the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, steps)
    generator = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for step in range(steps):
        value = batch_loss(generator)
        value.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss = value.item()
        if step % 200 == 0:
            print(f"{name} step {step}/{steps}: loss {loss:.3f}", flush=True)
    return loss


def _lm_batch(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """[BOS] text [EOS], right-padded, with the padding left out of the loss."""
    batch = tokenizer([f"{tokenizer.bos_token} {t}" for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # [B, L]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


@torch.no_grad()
def held_out_perplexity(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], batch_size: int = 64
) -> float:
    """exp of the mean negative log-likelihood per predicted token ([EOS] included, [BOS] not predicted)."""
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = _lm_batch(tokenizer, texts[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, L, V]
        targets = batch["labels"][:, 1:]  # [B, L-1]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="sum")
        total, count = total + nll.item(), count + (targets != -100).sum().item()
    return math.exp(total / count)
