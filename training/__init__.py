"""Shop The Look data, Complete the Look examples, feature cache, training and evaluation."""
