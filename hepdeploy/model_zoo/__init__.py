"""hepdeploy.model_zoo"""
