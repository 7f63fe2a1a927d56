"""Audio in and out: the only package that touches codecs.

- `children`: every ffmpeg/ffprobe child, under one set of rules (limits,
  cancellation, reaping, `file:` inputs);
- `probe`: what a file says about itself;
- `decoding`: any input to the model's rate and channels, in blocks;
- `encoding`: stems to wav, flac or mp3, in blocks;
- `peaks`: each stem's waveform picture, taken from the blocks as they are encoded;
- `resample`: stems to another rate than the model's (output.sample_rate);
- `tags`: the source's tags and cover art, onto every stem (output.tags);
- `transcode`: a finished stem file into another format (HTTP answers).
"""

from stemd.audio.children import kill_children
from stemd.audio.decoding import BlockSink, Decoded, decode, decode_to, decoder_errors
from stemd.audio.encoding import StemFormat, StemReader, encode, encode_stem, stems_to_write
from stemd.audio.peaks import PEAKS, Peaks, write_peaks
from stemd.audio.probe import Probe, probe, probe_ffprobe
from stemd.audio.resample import stem_rate
from stemd.audio.tags import Tags, read_tags, write_tags
from stemd.audio.transcode import MP3_320, answer_format, transcode

__all__ = [
    "MP3_320",
    "PEAKS",
    "BlockSink",
    "Decoded",
    "Peaks",
    "Probe",
    "StemFormat",
    "StemReader",
    "Tags",
    "answer_format",
    "decode",
    "decode_to",
    "decoder_errors",
    "encode",
    "encode_stem",
    "kill_children",
    "probe",
    "probe_ffprobe",
    "read_tags",
    "stem_rate",
    "stems_to_write",
    "transcode",
    "write_peaks",
    "write_tags",
]
