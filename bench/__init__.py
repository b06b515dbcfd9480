"""The roofline benchmark of largeconv (bench/roofline.py) and its shape suites, counts and peaks."""
