"""edge.proxy"""
