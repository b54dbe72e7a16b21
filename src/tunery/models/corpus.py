"""The fixed text the built-in tokenizer is trained on.

Changing a single character changes the tokenizer, so the built-in models' directory version in
``builtin.py`` must be bumped with it. The text is plain English with a little chat and code so the
byte-level BPE learns the common words, digits and punctuation; anything else still encodes,
byte by byte.
"""

from __future__ import annotations

CORPUS = r"""
The quick brown fox jumps over the lazy dog. A small model can learn a lot from a little data.
What is the capital of France? The capital of France is Paris.
What is the capital of Japan? The capital of Japan is Tokyo.
What is the capital of Italy? The capital of Italy is Rome.
What is the capital of Spain? The capital of Spain is Madrid.
What is the capital of Germany? The capital of Germany is Berlin.
Who wrote the play? She wrote the play in the summer, and he read it in the winter.
How many days are in a week? There are seven days in a week.
How many hours are in a day? There are twenty four hours in a day.
What color is the sky? The sky is blue on a clear day, and grey when it rains.
Which animal is the largest? The blue whale is the largest animal that has ever lived.
Where do you live? I live in a house near the river, close to the old bridge.
When does the train leave? The train leaves at nine in the morning and arrives at noon.
Why is the water cold? The water is cold because the snow in the mountains melts into it.
Please answer the question in one word. Yes. No. Maybe. Thank you. You are welcome.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 42 50 64 99 100 128 256 512 1000 2024.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty, hundred, thousand.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March, April, May,
June, July, August, September, October, November, December. Spring, summer, autumn, winter.
Red, orange, yellow, green, blue, purple, black, white, brown, pink, gold, silver.
The cat sat on the mat. The dog ran in the park. The bird sang in the tree. The fish swam in the sea.
People often ask simple questions, and a helpful assistant gives a short, clear and correct answer.
If you do not know the answer, say that you do not know. Never make up facts.
The user asked for help with a recipe: mix the flour, sugar, eggs and milk, then bake for thirty minutes.
Science: water boils at 100 degrees Celsius and freezes at 0 degrees. The Earth goes around the Sun.
The Moon goes around the Earth. Light is faster than sound. Plants need water, light and air to grow.
History: the first people to fly a plane were the Wright brothers, in the year 1903.
Geography: the longest river is the Nile, the highest mountain is Everest, and the largest ocean is the Pacific.
Math: two plus two is four. Three times three is nine. Ten minus one is nine. Half of eight is four.
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
Paris.<|im_end|>
<|im_start|>user
And of Spain?<|im_end|>
<|im_start|>assistant
Madrid.<|im_end|>
<|im_start|>user
Translate "good morning" into French.<|im_end|>
<|im_start|>assistant
Bonjour.<|im_end|>
<|im_start|>tool
{"temperature": 21, "unit": "celsius", "city": "London"}<|im_end|>
<|im_start|>assistant
<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>
def add(a, b):
    return a + b

for i in range(10):
    print(i, add(i, i))

{"question": "What is 2 + 2?", "answer": "4"}
{"prompt": "Write a haiku about the sea.", "completion": "Waves fold into foam, the tide keeps its promise."}
User: Can you tell me a joke? Assistant: Why did the scarecrow win an award? Because he was outstanding in his field.
User: What is your name? Assistant: I am a small language model trained to answer questions.
User: What time is it? Assistant: I cannot see a clock, but you can check the time on your phone.
It was a bright cold day in April, and the clocks were striking thirteen.
Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little.
It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.
All happy families are alike; each unhappy family is unhappy in its own way.
In the beginning the world was quiet, and then the people came with their stories, songs and questions.
Good models are trained on good data. Bad data makes bad models. Check your data before you train.
The answer is correct. The answer is wrong. The answer is true. The answer is false.
"""
