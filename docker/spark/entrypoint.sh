#!/usr/bin/env bash
# `master [options]` or `worker [options] spark://host:port` in the foreground (Spark's own
# standalone classes, as `spark-class` runs them); anything else is run as given.
set -euo pipefail

# Hadoop's login looks the process's user up by uid: compose may run this image as any uid (the
# Airflow tasks' AIRFLOW_UID), so give an unknown one a passwd entry, as Spark's and Airflow's
# official images do.
if ! getent passwd "$(id -u)" > /dev/null && [[ -w /etc/passwd ]]; then
    echo "spark:x:$(id -u):$(id -g):spark:${SPARK_WORKER_DIR}:/usr/sbin/nologin" >> /etc/passwd
fi

case "${1:-}" in
    master) shift; exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master "$@" ;;
    worker) shift; exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$@" ;;
    *) exec "$@" ;;
esac
