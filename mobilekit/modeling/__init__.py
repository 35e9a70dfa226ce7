"""The export-friendly decoder shared by every family and target."""

from mobilekit.modeling.spec import DecoderSpec, Llama3RopeScaling, LongRopeScaling

__all__ = ["Decoder", "DecoderSpec", "EagerDecoder", "Llama3RopeScaling", "LongRopeScaling", "rotary_tables"]

_DECODER_NAMES = ("Decoder", "EagerDecoder", "rotary_tables")


def __getattr__(name: str):
    # The decoder needs torch; the spec does not. Families import the spec (through this
    # package), and must not pull torch in with it, so the decoder loads on first use.
    if name in _DECODER_NAMES:
        from mobilekit.modeling import decoder

        return getattr(decoder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
