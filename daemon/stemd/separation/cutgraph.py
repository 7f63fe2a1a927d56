"""HTDemucs cut where its complex numbers begin, so another runtime can run the middle.

HTDemucs.forward is three parts: the host side in (pad to the training length,
STFT, magnitude, normalisation of both branches), the network (the frequency and
time encoders, the cross-transformer, the decoders: real tensors of fixed shape
in, real tensors out), and the host side out (denormalise, mask, inverse STFT,
the sum of both branches, the crop). Only the network is exported: the STFT is
complex, which neither ONNX nor OpenVINO's converter takes (`aten::view_as_complex`),
and the host parts cost about 0.5 % of a forward pass.

`Network` is the middle as a module of its own, line for line HTDemucs.forward's
(demucs 4.x), and `CutForward` puts the three back together around any callable
that runs the middle: with `Network` itself the result is bit-exact with
HTDemucs.forward (tests/integration/test_runtimes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs

from stemd.separation.batching import segment_length

# this cut's version, part of every export's key: a change to Network or to what
# CutForward hands it makes the exports again
CUT_VERSION = 1
# the middle, as another runtime runs it: (x, xt) -> (x, xt)
NetworkCall = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def why_not_cut(model: Any) -> str | None:
    """Why `model` cannot be run cut (None when it can): only HTDemucs is cut, and
    only as it runs in evaluation (a fixed training length, no random shift of the
    positional embedding, which would make every pass differ)."""
    if not isinstance(model, HTDemucs):
        return f"{type(model).__name__} is not an HTDemucs (only HTDemucs is exported)"
    if type(model).forward is not HTDemucs.forward:
        # the cut replicates HTDemucs.forward; a subclass's own forward is not it
        return f"{type(model).__name__} has a forward pass of its own"
    if not model.use_train_segment:
        return "it runs at the length of each input (use_train_segment is off)"
    transformer = model.crosstransformer
    if transformer is not None and int(getattr(transformer, "sin_random_shift", 0)):
        return "its positional embedding is shifted at random in every pass"
    return None


class Network(torch.nn.Module):
    """HTDemucs between the normalised magnitude (x) and time (xt) inputs and the
    decoders' outputs: no complex numbers, one shape per batch size."""

    def __init__(self, model: HTDemucs) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            b, c, f, t = x.shape
            if m.bottom_channels:
                x = m.channel_upsampler(x.reshape(b, c, f * t)).reshape(b, -1, f, t)
                xt = m.channel_upsampler_t(xt)
            x, xt = m.crosstransformer(x, xt)
            if m.bottom_channels:
                x = m.channel_downsampler(x.reshape(b, -1, f * t)).reshape(b, -1, f, t)
                xt = m.channel_downsampler_t(xt)
        for idx, decode in enumerate(m.decoder):
            skip = saved.pop(-1)
            x, pre = decode(x, skip, lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        return x, xt


@dataclass
class HostIn:
    """What the host side keeps between the two halves of one pass."""

    z: torch.Tensor  # the complex spectrogram, for the mask
    x: torch.Tensor  # normalised magnitude: the network's first input
    xt: torch.Tensor  # normalised waveform: its second
    mean: torch.Tensor
    std: torch.Tensor
    meant: torch.Tensor
    stdt: torch.Tensor
    length: int  # the input's own length, before the pad to the training length


class CutForward:
    """HTDemucs.forward with its network run by `network`: the host side in
    torch, as HTDemucs does it (evaluation only)."""

    def __init__(self, model: HTDemucs, network: NetworkCall) -> None:
        reason = why_not_cut(model)
        if reason is not None:
            raise ValueError(f"cannot cut this model: {reason}")
        self.model = model
        self.network = network
        self.length = segment_length(model, None)  # the training length: the export's

    def host_in(self, mix: torch.Tensor) -> HostIn:
        m = self.model
        length = mix.shape[-1]
        if length < self.length:
            mix = F.pad(mix, (0, self.length - length))
        z = m._spec(mix)
        mag = m._magnitude(z)
        mean = mag.mean(dim=(1, 2, 3), keepdim=True)
        std = mag.std(dim=(1, 2, 3), keepdim=True)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        x = (mag - mean) / (1e-5 + std)
        xt = (mix - meant) / (1e-5 + stdt)
        return HostIn(z, x, xt, mean, std, meant, stdt, length)

    def host_out(self, state: HostIn, x: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        m = self.model
        batch, _channels, bins, frames = state.z.shape
        sources = len(m.sources)
        x = x.view(batch, sources, -1, bins, frames) * state.std[:, None] + state.mean[:, None]
        waves = m._ispec(m._mask(state.z, x), self.length)
        xt = xt.view(batch, sources, -1, self.length) * state.stdt[:, None] + state.meant[:, None]
        out: torch.Tensor = xt + waves
        return out[..., : state.length] if state.length < self.length else out

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.shape[-1] > self.length:
            raise ValueError(f"a chunk of {mix.shape[-1]} samples; the model takes {self.length}")
        state = self.host_in(mix)
        x, xt = self.network(state.x, state.xt)
        return self.host_out(state, x, xt)
