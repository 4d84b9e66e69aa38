"""Tests of popsrv.app."""
