"""sofa"""
