"""Past one machine: validation, calibration and batch inference on a Ray cluster.

Ray (``pip install 'edge-resnet[ray]'``) is imported only inside this package, and only when a
command is given ``--ray``; nothing else in edge-resnet imports it. Each module has one job:

* :mod:`.cluster` joins or starts a cluster (``--ray auto|local|ADDRESS``);
* :mod:`.shipping` sends a bundle to the workers as a Ray object, checked again on every worker;
* :mod:`.plan` turns a data set or a folder of images/videos into a Ray Dataset of batches;
* :mod:`.actors` holds the callable classes ``map_batches`` runs, one bundle load per actor;
* :mod:`.merge` takes results back in source order, once each, and folds them into the local
  accumulators (validation metrics, calibration histograms), which merge exactly;
* :mod:`.validate`, :mod:`.calibrate`, :mod:`.batch_run` drive the three commands.

Sharding, scheduling and retries are Ray Data's (an actor pool with ``max_restarts`` and task
retries): a worker that dies mid-batch is restarted and its batch run again; the driver keeps each
batch's result once, by its position.
"""
