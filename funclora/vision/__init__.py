"""The image application built on the funclora core: pretrained backbones, image loading, the
drawn-goldfish experiment, evaluation, reports and the `funclora` command line.

The core (`funclora`) never imports this package; this package imports torchvision and PIL.
"""

BACKBONES: tuple[str, ...] = ("vgg19", "efficientnet_lite0")
"""The pretrained backbones `funclora.vision.backbones.load_backbone` knows: named here, where the
command line can read them without importing torchvision."""
