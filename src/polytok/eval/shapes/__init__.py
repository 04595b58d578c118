"""The built-in ``shapes`` world as an evaluation: a judge that reads shape, colour, count, size and
position off an image, the versioned text -> image prompt suite, the caption grammar read back into
attributes, and the scores with the baselines (chance, single-attribute models) they must beat."""
