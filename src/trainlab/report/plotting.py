"""matplotlib, imported when a figure is drawn (not when trainlab starts), on the Agg backend."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt
