"""The user commands, a module each with its `main(argv=None)`: train, crossval, evaluate,
predict, export, serve, plot, choose_crf and make_vgg. The top-level scripts (`python
predict.py`) and the commands pip installs (`roadseg-predict`, through roadseg.console) run the
same `main`."""
