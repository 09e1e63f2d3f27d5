"""Fixtures shared by several test files; helpers (tiny configs, inputs, tokenizers) are in the plain module `tiny.py`.

`tests/` goes on `sys.path` here so that test files import those helpers as `from tiny import ...` (no fixture is
imported that way: pytest finds the fixtures below by name).
"""

import os
import sys

# Every test runs offline: tiny random configs, models saved to temp dirs, generated data. Set here, once, before any
# test module imports transformers / huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tiny import (  # noqa: E402
    BPE_MERGES,
    BPE_VOCAB,
    BPE_VOCAB_SIZE,
    ENDOFTEXT,
    bert_decoder_config,
    bert_encoder_config,
    bpe_gpt2_tokenizer,
    deit_config,
    gpt2_config,
    randomize,
    swin_config,
    tiny_image_processor,
    trocr_config,
    vit_config,
    write_bert_vocab,
)
from transformers import BertTokenizer, RobertaTokenizer, TrOCRProcessor  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`), restored after it.

    The models are tiny: one thread is as fast, and far faster when other processes share the CPU cores (OpenMP
    workers spin-waiting under contention made a tiny forward 50x slower).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- local stand-ins for the hub checkpoints of the seed docs (test_seed_docs.py, test_seed_docs_frameworks.py) -------
# Module-scoped: each module that uses one writes it once, in its own temp dir.


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster sized for CI (2 CPUs, a 200 MB object store, one thread per worker), one per test module:
    start-up takes seconds, so tests of a module share it."""
    import ray  # the `ray` extra; imported only by the modules that use the cluster

    ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bert_tokenizer_vocab(tmp_path_factory) -> str:
    return write_bert_vocab(str(tmp_path_factory.mktemp("bert-vocab")))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, bert_tokenizer_vocab) -> str:
    """google-bert/bert-base-uncased: a BertForPreTraining checkpoint (MLM + NSP heads) and its tokenizer."""
    directory = str(tmp_path_factory.mktemp("bert-base-uncased"))
    tokenizer = BertTokenizer(bert_tokenizer_vocab)
    config = bert_encoder_config()
    config.vocab_size = len(tokenizer)
    model = randomize(transformers.BertForPreTraining(config), seed=11)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> str:
    """google/vit-base-patch16-224-in21k: a ViTModel and its image processor."""
    directory = str(tmp_path_factory.mktemp("vit-in21k"))
    randomize(transformers.ViTModel(vit_config()), seed=12).save_pretrained(directory)
    tiny_image_processor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def swin_dir(tmp_path_factory) -> str:
    """microsoft/swin-base-patch4-window7-224-in22k: an image-classification checkpoint (head included)."""
    directory = str(tmp_path_factory.mktemp("swin-in22k"))
    config = swin_config()
    config.num_labels = 5
    randomize(transformers.SwinForImageClassification(config), seed=13).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory) -> str:
    """nlpconnect/vit-gpt2-image-captioning: a fine-tuned ViT-GPT-2 saved by transformers, with its tokenizer and image
    processor; special tokens and generation settings as on the hub (<|endoftext|> everywhere, beams 4, max 16)."""
    directory = str(tmp_path_factory.mktemp("vit-gpt2-image-captioning"))
    decoder = gpt2_config()
    decoder.vocab_size = BPE_VOCAB_SIZE
    decoder.bos_token_id = decoder.eos_token_id = ENDOFTEXT
    decoder.pad_token_id = None
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder)
    model = randomize(transformers.VisionEncoderDecoderModel(config), seed=14)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = cfg.pad_token_id = cfg.eos_token_id = cfg.bos_token_id = ENDOFTEXT
    model.generation_config.max_length = 16
    model.generation_config.num_beams = 4
    model.save_pretrained(directory)
    bpe_gpt2_tokenizer().save_pretrained(directory)
    tiny_image_processor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trocr_dir(tmp_path_factory) -> str:
    """microsoft/trocr-base-handwritten: ViT encoder + TrOCR decoder, saved by transformers, with a TrOCRProcessor."""
    return _trocr(str(tmp_path_factory.mktemp("trocr-base-handwritten")), vit_config(), seed=15)


@pytest.fixture(scope="module")
def trocr_small_dir(tmp_path_factory) -> str:
    """microsoft/trocr-small-handwritten: DeiT encoder (class + distillation tokens) + TrOCR decoder, as above."""
    return _trocr(str(tmp_path_factory.mktemp("trocr-small-handwritten")), deit_config(), seed=17)


def _trocr(directory: str, encoder: transformers.PreTrainedConfig, seed: int) -> str:
    decoder = trocr_config()
    decoder.vocab_size = BPE_VOCAB_SIZE
    decoder.bos_token_id, decoder.pad_token_id, decoder.eos_token_id = 0, 1, 2  # <s>, <pad>, </s>
    decoder.decoder_start_token_id = 2
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = randomize(transformers.VisionEncoderDecoderModel(config), seed=seed)
    # Saved with <s> as the start token, so the example's `decoder_start_token_id = eos` edit visibly changes it.
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 0, 1, 2
    model.save_pretrained(directory)
    tokenizer = RobertaTokenizer(vocab=dict(BPE_VOCAB), merges=list(BPE_MERGES))
    TrOCRProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert2bert_dir(tmp_path_factory, bert_tokenizer_vocab) -> str:
    """patrickvonplaten/bert2bert_cnn_daily_mail: a fine-tuned bert2bert saved by transformers, with its tokenizer."""
    directory = str(tmp_path_factory.mktemp("bert2bert_cnn_daily_mail"))
    tokenizer = BertTokenizer(bert_tokenizer_vocab)
    encoder, decoder = bert_encoder_config(), bert_decoder_config()
    encoder.vocab_size = decoder.vocab_size = len(tokenizer)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = randomize(transformers.EncoderDecoderModel(config), seed=16)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.cls_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.sep_token_id
    model.generation_config.max_length = 20
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPModel with a character-level CLIP tokenizer and an image processor, saved to disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    text = {"vocab_size": len(vocab), "max_position_embeddings": 48, "bos_token_id": 0, "eos_token_id": 1}
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {"image_size": 32, "patch_size": 8}
    config = CLIPConfig(text_config=text | tower, vision_config=vision | tower, projection_dim=8)
    directory = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(directory)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=48).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory
