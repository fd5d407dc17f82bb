"""The names the ``wrc eval`` options accept, importable without torch so that the CLI rejects a wrong one at
once (exit 2). The protocol modules define what each name means; a test keeps the two in step."""

SEG_DATASETS = ("auto", "voc", "ade20k", "cityscapes", "coco27", "generic")
SEG_PROTOCOLS = ("jafar", "featup")
DEPTH_DATASETS = ("auto", "nyu", "generic")
DEPTH_PROTOCOLS = ("probe3d", "jafar")
CORR_DATASETS = ("spair", "pairs", "stereo")
DISCOVERY_DATASETS = ("voc07", "voc12", "coco20k", "generic")
DISCOVERY_METHODS = ("tokencut", "lost")
OVSEG_DATASETS = ("auto", "voc", "ade20k", "cityscapes", "cocostuff", "generic")
OVSEG_METHODS = ("proxyclip", "maskclip")
VOS_PROTOCOLS = ("square", "native")
