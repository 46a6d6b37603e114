"""Model configuration for the MFuser-CLIP oracle.

A config is one of the JSON files in tools/configs/ (``mfuser_clip_vitl_512.json`` is the released
model, ``mfuser_clip_tiny.json`` a structurally identical toy). ``load_config`` turns it into a
``Config``: a read-only tree whose sections read as attributes or items::

    cfg = load_config("tiny")            # or "vitl_512", or a path to a JSON file
    cfg.vision.width, cfg["text"]["layers"], cfg.slide.crop

Derived sizes that several modules need are computed here once (see the properties of ``Config``).
"""

import json
import math
import os

import torch

CONFIG_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs"))

_SHORT_NAMES = {
    "tiny": "mfuser_clip_tiny.json",
    "vitl_512": "mfuser_clip_vitl_512.json",
    "real": "mfuser_clip_vitl_512.json",
}

# CLIP normalisation of the input images (x255, RGB), and the ImageNet one the DINOv2 branch
# re-normalises to (backbone.py undoes the first and applies the second).
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Test-time scale that images are resized to (keep ratio) before sliding, per dataset.
TEST_SCALES = {"cityscapes": (2048, 1024), "mapillary": (2048, 1024), "bdd": (1280, 720)}

IGNORE_INDEX = 255

# CLIP BPE token ids of the 19 Cityscapes class names at context length 5 (SOT, name tokens, EOT,
# zero padding), one row per trainId, as computed by the reference tokenizer.
CITYSCAPES_TOKEN_IDS = (
    (49406, 1759, 49407, 0, 0),       # road
    (49406, 23278, 49407, 0, 0),      # sidewalk
    (49406, 2307, 49407, 0, 0),       # building
    (49406, 2569, 49407, 0, 0),       # wall
    (49406, 12679, 49407, 0, 0),      # fence
    (49406, 8170, 49407, 0, 0),       # pole
    (49406, 3399, 1395, 49407, 0),    # traffic light
    (49406, 3399, 2292, 49407, 0),    # traffic sign
    (49406, 33947, 49407, 0, 0),      # vegetation
    (49406, 20184, 49407, 0, 0),      # terrain
    (49406, 2390, 49407, 0, 0),       # sky
    (49406, 2533, 49407, 0, 0),       # person
    (49406, 9707, 49407, 0, 0),       # rider
    (49406, 1615, 49407, 0, 0),       # car
    (49406, 4629, 49407, 0, 0),       # truck
    (49406, 2840, 49407, 0, 0),       # bus
    (49406, 3231, 49407, 0, 0),       # train
    (49406, 10297, 49407, 0, 0),      # motorcycle
    (49406, 11652, 49407, 0, 0),      # bicycle
)


def cityscapes_token_ids():
    """The table above as an int64 tensor [19, 5]."""
    return torch.tensor(CITYSCAPES_TOKEN_IDS, dtype=torch.int64)


class Section:
    """A read-only view of one JSON object: keys read as attributes and as items."""

    def __init__(self, data):
        object.__setattr__(self, "_data", {k: _wrap(v) for k, v in data.items()})

    def __getattr__(self, name):
        # copy/pickle probe attributes on a bare instance before __init__ ran: no _data yet
        data = self.__dict__.get("_data")
        if data is None or name not in data:
            raise AttributeError(name)
        return data[name]

    def __deepcopy__(self, memo):
        return self  # read-only: sharing is safe

    def __setattr__(self, name, value):
        raise AttributeError("config sections are read-only")

    def __getitem__(self, key):
        return self._data[key]

    def __contains__(self, key):
        return key in self._data

    def get(self, key, default=None):
        return self._data.get(key, default)

    def keys(self):
        return self._data.keys()

    def items(self):
        return self._data.items()

    def to_dict(self):
        return {k: (v.to_dict() if isinstance(v, Section) else v) for k, v in self._data.items()}

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.to_dict())


def _wrap(value):
    if isinstance(value, dict):
        return Section(value)
    if isinstance(value, list):
        return tuple(_wrap(v) for v in value)
    return value


class Config(Section):
    """A whole model config. The properties are sizes derived from the JSON, named as upstream."""

    @property
    def grid(self):
        """Patch grid side at the training crop size (32 for 512 / 16)."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self):
        """Tokens per encoder: patch tokens + class token (1025 for the real config)."""
        return self.grid * self.grid + 1

    @property
    def fpn_dim(self):
        """Channels of the fused multi-level features: DINOv2 width + CLIP width (2048)."""
        return 2 * self.vision.width

    @property
    def text_context_length(self):
        """Text encoder sequence length: learned prompt tokens + class-name tokens (10)."""
        return self.text.n_contexts + self.text.context_length

    @property
    def adapter_dt_rank(self):
        """``dt_rank='auto'`` of an MVFuser at the backbone width: ceil(d / 16)."""
        return math.ceil(self.vision.width / 16)


def load_config(name_or_path="vitl_512"):
    """Load a model config by short name ('tiny', 'vitl_512' / 'real'), file name or path."""
    path = name_or_path
    if name_or_path in _SHORT_NAMES:
        path = os.path.join(CONFIG_DIR, _SHORT_NAMES[name_or_path])
    elif not os.path.exists(path):
        path = os.path.join(CONFIG_DIR, name_or_path)
    with open(path) as f:
        data = json.load(f)
    cfg = Config(data)
    if len(cfg.class_names) != cfg.num_classes:
        raise ValueError("%s: %d class names for %d classes" % (path, len(cfg.class_names), cfg.num_classes))
    return cfg
