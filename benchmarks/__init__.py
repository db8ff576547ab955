"""benchmark.py's parts, apart from the library they measure: models (training and inference
time, FLOP rates, the peers, deployment formats, precisions), service (serve.py under load on
loopback, and the soak) and loader (the training loader's rate). They may run the top-level
scripts; roadseg never imports them."""
