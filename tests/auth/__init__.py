"""Tests of popsrv.auth."""
