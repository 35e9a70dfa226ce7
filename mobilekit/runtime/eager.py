"""The mobilekit decoder run eagerly with a KV cache: the stage-1 session, and the
runtime for weights read back out of an artefact (Core ML on Linux)."""

from __future__ import annotations

import torch

from mobilekit.modeling import Decoder, EagerDecoder, rotary_tables
from mobilekit.modeling.decoder import (attention, attention_mask, gated_delta_rule, select_rows, zero_conv_state,
                                       zero_recurrent_state)
from mobilekit.runtime import Session


class EagerSession(Session):
    runtime = "mobilekit decoder (PyTorch eager)"

    def __init__(self, decoder: Decoder, max_seq_len: int, runtime: str | None = None):
        super().__init__(max_seq_len)
        self.decoder = decoder
        self.rope = rotary_tables(decoder.spec, max_seq_len)
        self._k: list[torch.Tensor | None] = []
        self._v: list[torch.Tensor | None] = []
        self._conv: list[torch.Tensor | None] = []  # conv layers' states (spec.conv_layers)
        self._recurrent: list[torch.Tensor | None] = []  # delta layers' matrix states
        if runtime:
            self.runtime = runtime

    def reset(self) -> None:
        super().reset()
        self._k = [None] * self.decoder.spec.num_layers
        self._v = [None] * self.decoder.spec.num_layers
        self._conv = [None] * self.decoder.spec.num_layers
        self._recurrent = [None] * self.decoder.spec.num_layers

    @torch.no_grad()
    def _run(self, tokens):
        if self.position == 0:
            self.reset()
        start, t = self.position, len(tokens)
        total = start + t
        spec = self.decoder.spec
        positions = torch.arange(start, total)
        keys = torch.arange(total)
        windows = {spec.layer_window(i) for i in range(spec.num_layers)}
        masks = {w: attention_mask(positions, keys, w) for w in windows}

        def attend(i, q, k, v):
            if self._k[i] is not None:
                k, v = torch.cat([self._k[i], k], 1), torch.cat([self._v[i], v], 1)
            self._k[i], self._v[i] = k, v
            return attention(q, k, v, masks[spec.layer_window(i)], spec.attention_scale, spec.attention_softcap)

        def convolve(i, x, conv):
            past = self._conv[i] if self._conv[i] is not None else zero_conv_state(spec, x.shape[0], x.dtype)
            out, self._conv[i] = conv(x, past)
            return out

        def recur(i, q, k, v, g, beta):
            past = self._recurrent[i] if self._recurrent[i] is not None else zero_recurrent_state(spec)
            out, self._recurrent[i] = gated_delta_rule(q, k, v, g, beta, past, self.max_seq_len)
            return out

        ids = torch.tensor([tokens], dtype=torch.long)
        rope = select_rows(self.rope, slice(start, total))
        logits = self.decoder(ids, rope, attend, last_only=True, positions=positions, convolve=convolve,
                              recur=recur)
        return logits[0].float().numpy()


class DecoderReference:
    """The mobilekit decoder with the slice of the transformers model API that
    validate.compute_reference uses (`model(ids).logits`, `model.config.to_dict()`, greedy
    `generate`): the parity reference for families transformers lacks, when no independent
    one is available. It checks lowering and quantization (stage 2), not the port itself."""

    def __init__(self, decoder: Decoder, config: dict, max_seq_len: int):
        from types import SimpleNamespace

        self._eager = EagerDecoder(decoder)
        self._session = EagerSession(decoder, max_seq_len)
        self.config = SimpleNamespace(to_dict=lambda: dict(config))

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, **_ignored):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self._eager(input_ids))

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None, **_ignored) -> torch.Tensor:
        """Greedy only, one unpadded prompt (what compute_reference asks for)."""
        stops = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        prompt = input_ids[0].tolist()
        tokens = self._session.greedy(prompt, max_new_tokens, stop_ids=stops)
        return torch.tensor([prompt + tokens])
