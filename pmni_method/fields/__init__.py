"""Neural fields of pmni (nerfstudio-free)."""

from pmni_method.fields.hash_encoding import HashGridEncoding
from pmni_method.fields.sdf_field import SDFField, SDFFieldConfig

__all__ = ["HashGridEncoding", "SDFField", "SDFFieldConfig"]
