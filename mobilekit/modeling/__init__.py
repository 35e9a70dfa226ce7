"""The export-friendly decoder shared by every family and target."""

from mobilekit.modeling.decoder import Decoder, EagerDecoder, rotary_tables
from mobilekit.modeling.spec import DecoderSpec, Llama3RopeScaling, LongRopeScaling

__all__ = ["Decoder", "DecoderSpec", "EagerDecoder", "Llama3RopeScaling", "LongRopeScaling", "rotary_tables"]
