"""edge.cli"""
