"""Reading a run back for people: run metrics, the function profiler, charts, histograms and Markdown tables."""
