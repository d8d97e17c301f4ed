"""The alignment encoder: user-profile and persona text encoder, its InfoNCE loss and training loop.

Arrives with the encoder-training stage.
"""
