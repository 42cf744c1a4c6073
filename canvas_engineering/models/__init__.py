"""Model layer: canvas encodings, looped blocks, backbones, codecs, action heads, loop checkpoints."""

