"""Audio in and out: the only package that touches codecs.

- `children`: every ffmpeg/ffprobe child, under one set of rules (limits,
  cancellation, reaping, `file:` inputs);
- `probe`: what a file says about itself;
- `decoding`: any input to the model's rate and channels, in blocks;
- `encoding`: stems to wav, flac or mp3, in blocks.
"""

from stemd.audio.children import kill_children
from stemd.audio.decoding import BlockSink, Decoded, decode, decode_to, decoder_errors
from stemd.audio.encoding import StemFormat, StemReader, encode, encode_stem, stems_to_write
from stemd.audio.probe import Probe, probe

__all__ = [
    "BlockSink",
    "Decoded",
    "Probe",
    "StemFormat",
    "StemReader",
    "decode",
    "decode_to",
    "decoder_errors",
    "encode",
    "encode_stem",
    "kill_children",
    "probe",
    "stems_to_write",
]
