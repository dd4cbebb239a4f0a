"""Models: the DiT (backbone blocks, condition fusion, expression controller) and the VAE."""
