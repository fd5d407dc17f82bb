"""torch.hub entry points: ``torch.hub.load("<owner>/wrcli", "wrc_dinov2_vits14")``, or with a checkout,
``torch.hub.load("path/to/wrcli", "wrc_dinov2_vits14", source="local")``. Each returns a frozen backbone and its
upsampler as one module (:class:`wrcli.hub.DenseFeatures`): ``model(images)`` gives the dense features. Offline,
give the backbone's weights: ``weights="dinov2_vits14.safetensors"`` or ``$WRC_BACKBONE_WEIGHTS``."""

dependencies = ["torch", "timm", "safetensors", "numpy", "PIL"]  # what importing wrcli.hub needs

from wrcli.hub import wrc_dinov2_vits14  # noqa: E402,F401 - the entry points torch.hub lists
