"""Operator and developer tools that ship with the package."""
