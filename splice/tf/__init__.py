"""splice's TensorFlow (Keras 3) composites: `TFVisionEncoderDecoderModel`, `TFEncoderDecoderModel`.

Install with `pip install "splice[tf]"`. `import splice` does not import TensorFlow;
`splice.TFVisionEncoderDecoderModel` does, on first access. The math is the JAX implementation's, lowered with `jax2tf`.
"""

from .modeling import TFEncoderDecoderModel, TFSeq2SeqLMOutput, TFSpliceModel, TFVisionEncoderDecoderModel

__all__ = ["TFEncoderDecoderModel", "TFSeq2SeqLMOutput", "TFSpliceModel", "TFVisionEncoderDecoderModel"]
