"""Vision-language U-Nets: nnU-Net encoder stages interleaved with text fusion (import from the submodules)."""
