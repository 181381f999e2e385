"""Datasets: the embedded mini VOC / ImageNet data (`make_mini_data`), layout checks (`layout`),
and Detectron2 VOC registration (`voc.register_voc_datasets`)."""
