"""hepdeploy.serving: serving configuration from the data and a latency budget.

Above the stages. Shapes from the data's multiplicities and TensorRT profiles (``shapes.py``);
the batch latency t(b) measured with perf_analyzer's stability rule (``latency.py``); batching and
queue delay from a queue model over t(b), a rate and a budget (``batching.py``); instances within
the cores and memory (``instances.py``); consistency before publishing (``consistency.py``);
confirmation against a live server and the SONIC clients-per-instance figure (``confirm.py``);
the whole ``hepdeploy profile`` (``profile.py``).
"""
