"""hepdeploy.triton"""
