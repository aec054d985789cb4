"""edge.config"""
