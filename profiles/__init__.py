"""Profiles shipped with autotune. Data only: `autotune.apply` looks shipped names up in this folder."""
