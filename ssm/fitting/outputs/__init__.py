"""What a fit gives: the result type, the files written, colours and textures."""
