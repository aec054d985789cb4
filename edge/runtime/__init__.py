"""edge.runtime"""
