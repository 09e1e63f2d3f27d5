"""Every class's `forward` is written out (go-to-definition lands on its body) with its transformers counterpart's
parameters, in that order: exporters and transformers' own introspection see real signatures."""

import inspect

import pytest
import transformers

import splice

# Today's signatures: a change here is a change of the public API.
EXPECTED = {
    splice.SpliceModel: ["pixel_values", "input_ids", "attention_mask", "input_values", "input_features",
                         "inputs_embeds", "decoder_input_ids", "decoder_attention_mask", "encoder_outputs",
                         "past_key_values", "decoder_inputs_embeds", "labels", "use_cache", "output_attentions",
                         "output_hidden_states", "return_dict", "kwargs"],
    splice.VisionEncoderDecoderModel: ["pixel_values", "decoder_input_ids", "decoder_attention_mask",
                                       "encoder_outputs", "past_key_values", "decoder_inputs_embeds", "labels",
                                       "use_cache", "output_attentions", "output_hidden_states", "return_dict",
                                       "kwargs"],
    splice.EncoderDecoderModel: ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask",
                                 "encoder_outputs", "past_key_values", "inputs_embeds", "decoder_inputs_embeds",
                                 "labels", "use_cache", "output_attentions", "output_hidden_states", "return_dict",
                                 "kwargs"],
    splice.SpeechEncoderDecoderModel: ["inputs", "attention_mask", "decoder_input_ids", "decoder_attention_mask",
                                       "encoder_outputs", "past_key_values", "decoder_inputs_embeds", "labels",
                                       "use_cache", "output_attentions", "output_hidden_states", "input_values",
                                       "input_features", "return_dict", "kwargs"],
}  # fmt: skip
COUNTERPARTS = {
    splice.VisionEncoderDecoderModel: transformers.VisionEncoderDecoderModel,
    splice.EncoderDecoderModel: transformers.EncoderDecoderModel,
    splice.SpeechEncoderDecoderModel: transformers.SpeechEncoderDecoderModel,
}


def _names(cls: type) -> list[str]:
    return [name for name in inspect.signature(cls.forward).parameters if name != "self"]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_forward_is_written_out_with_its_signature(cls):
    assert _names(cls) == EXPECTED[cls]
    assert "forward" in vars(cls), f"{cls.__name__}.forward is inherited or generated, not written in the class"
    source = inspect.getsource(cls.forward)
    assert "def forward(" in source and "_splice_forward(" in source
    assert not hasattr(cls.forward, "__signature__"), "a synthesized signature hides the written one"
    # Every parameter reaches the shared body by name (none is dropped on the way).
    for name in EXPECTED[cls][:-1]:
        assert f"{name}={name}" in source, f"{cls.__name__}.forward does not pass {name}"


@pytest.mark.parametrize("cls", list(COUNTERPARTS), ids=lambda cls: cls.__name__)
def test_forward_matches_transformers_order(cls):
    # transformers 5.24 renamed `past_key_values` to `cache`; splice takes both (see splice._compat.pop_cache).
    theirs = [("past_key_values" if n == "cache" else n) for n in _names(COUNTERPARTS[cls]) if n != "kwargs"]
    ours = _names(cls)
    # Positional calls written for transformers' class reach the same parameters; v5 folded some trailing ones into
    # `**kwargs`, which splice still names.
    assert ours[: len(theirs)] == theirs


def test_smallcap_keeps_the_vision_signature():
    assert _names(splice.SmallCapModel) == EXPECTED[splice.VisionEncoderDecoderModel]
