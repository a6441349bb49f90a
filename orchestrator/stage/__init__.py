"""Staging: the model directory and the image present and identical on every node.

    manifest.py   every file's size and BLAKE2b hash per node (cached), compared
    weights.py    copy what differs node-to-node with rsync (a temporary rsync daemon on the
                  source node, the targets pull), into a staging copy beside the final path,
                  verified, then swapped in: never a partial directory at the final path
    images.py     `save | load` streamed from a node that has the image to those that lack it
"""
