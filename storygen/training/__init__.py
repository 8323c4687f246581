"""Training and evaluating the shapes-world storygen model.

- :mod:`.windows`: the training data, drawn on the fly from the shapes world as the plan will
  ask for it: windows of ``F`` frames at a spacing over a story of scenes, each frame with its
  scene's prompt, some frames given (global, local or autoregressive role);
- :mod:`.vae`: the frame autoencoder (a diffusers ``AutoencoderKL``) trained on shapes frames;
- :mod:`.unet`: the latent ``MaskedUNet3D`` trained on windows;
- :mod:`.folder`: the model folder a run writes (pipeline layout, ``sampling.json``, the noise
  schedule), and its export as a plain text-to-video folder;
- :mod:`.shards`: training windows read from a ``curate export``'s shards instead;
- :mod:`.probe`: the pixel-probe evaluation: held-out stories rendered and read back with the
  shapes world's pixel readers, against the readers' ceiling on real frames.

Training may use ``curate`` (the shapes world and its readers); the rendering path does not.
"""
