"""Shards in: the WebDataset sample format, image decoding, degradations, and importers that
turn the field's folder layouts (GenImage, UniversalFakeDetect, plain folders) into shards."""
