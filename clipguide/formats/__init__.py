"""Checkpoint file formats: safe reading and format sniffing (key conversion lives elsewhere)."""

from clipguide.formats.readers import STATE_DICT_KEYS, RawCheckpoint, read_checkpoint, sniff_format

__all__ = ["STATE_DICT_KEYS", "RawCheckpoint", "read_checkpoint", "sniff_format"]
