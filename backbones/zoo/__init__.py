"""The zoo: other libraries' networks under the backbone contract.

- :mod:`~backbones.zoo.extractor`: :class:`ZooBackbone`, which wraps a feature extractor
  built by another library, measures what it really returns (layout, channels,
  strides) and adds what the contract promises (NCHW, ``out_indices`` checked, freezing
  that holds, ``norm_eval``, ``return_dict``);
- :mod:`~backbones.zoo.pyramid`: the simple feature pyramid that turns a plain ViT's
  stride-16 map into strides 4, 8, 16 and 32;
- :mod:`~backbones.zoo.timm_models` and :mod:`~backbones.zoo.tv_models`: the ``timm/``
  and ``tv/`` namespaces;
- :mod:`~backbones.zoo.probe`: builds a pattern of models and tables what works.

Nothing here imports timm's model code or torchvision's models until a zoo name is used.
"""
