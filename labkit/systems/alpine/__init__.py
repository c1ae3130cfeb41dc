"""The Alpine phase: media (catalog, download, xorriso extraction), a declarative apkovl, apkovl
inspection/audit/diff, the setup-alpine answer file, and the APKINDEX package-set predictor."""

from labkit.systems.alpine.apkindex import Index, Prediction, package_set, predict, read_apkindex
from labkit.systems.alpine.apkovl import ApkovlSpec, User, build_apkovl, write_apkovl
from labkit.systems.alpine.audit import Apkovl, Finding, audit, audit_file, diff, read_apkovl
from labkit.systems.alpine.extract import extract_iso, inspect_iso, refind_linux_conf
from labkit.systems.alpine.media import CATALOG, Release, find_release, obtain, verify_file

__all__ = [
    "CATALOG",
    "Apkovl",
    "ApkovlSpec",
    "Finding",
    "Index",
    "Prediction",
    "Release",
    "User",
    "audit",
    "audit_file",
    "build_apkovl",
    "diff",
    "extract_iso",
    "find_release",
    "inspect_iso",
    "obtain",
    "package_set",
    "predict",
    "read_apkindex",
    "read_apkovl",
    "refind_linux_conf",
    "verify_file",
    "write_apkovl",
]
